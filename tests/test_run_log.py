"""Reading a run back from its console log (meco_callbacks.training.run_log): losses, tokens, cooldown start."""

from pathlib import Path

from meco_callbacks.training.run_log import read_run_log


def block(batch: int, total: int, loss: float, tokens: int, *extra: str) -> str:
    """One batch as Composer's console logger prints it."""
    lines = [
        f'[batch={batch}/{total}]:',
        f'\t Train time/token: {tokens}',
        *extra,
        f'\t Train loss/train/total: {loss}',
    ]
    return '\n'.join(lines) + '\n'


def test_a_resumed_run_appended_to_its_log_keeps_the_later_value_of_each_batch(tmp_path: Path) -> None:
    log = tmp_path / 'meco-run' / 'train.log'
    log.parent.mkdir()
    first = ''.join(block(b, 4, 5.0 - b / 10, 100 * (b - 1)) for b in (1, 2, 3))  # stopped after batch 3
    resumed = 'INFO: meco_callbacks.training.cooldown: meco_cooldown: switched to plain documents at batch 3 (3ba)\n'
    resumed += block(3, 4, 4.5, 200) + block(4, 4, 4.4, 300, '\t Train meco/cooldown_start_batch: 3')
    log.write_text(first + resumed)

    run = read_run_log(log)

    assert run.name == 'meco-run' and run.complete and run.max_batches == 4
    assert run.losses == {1: 4.9, 2: 4.8, 3: 4.5, 4: 4.4}
    assert run.tokens == {1: 0, 2: 100, 3: 200, 4: 300}
    assert run.cooldown_start_batch == 3 and run.final_loss == 4.4


def test_a_log_every_ten_batches_estimates_tokens_between_and_takes_the_planned_boundary(tmp_path: Path) -> None:
    log = tmp_path / 'train.log'
    log.write_text('meco/cooldown_boundary: 36ba\n' + ''.join(block(b, 40, 3.0, 90 * (b - 1)) for b in (10, 20, 30)))

    run = read_run_log(log, 'every-ten')

    assert run.name == 'every-ten' and not run.complete
    assert sorted(run.losses) == [10, 20, 30] and run.cooldown_start_batch == 36
    assert [run.tokens_before(b) for b in (9, 14, 29, 36)] == [810, 1260, 2610, 3240]


def test_a_baseline_log_has_no_cooldown(tmp_path: Path) -> None:
    log = tmp_path / 'train.log'
    log.write_text(block(1, 2, 6.0, 0) + block(2, 2, 5.5, 512))

    assert read_run_log(log).cooldown_start_batch is None


def test_the_plot_can_put_runs_on_batch_slots_instead_of_logged_tokens(tmp_path: Path) -> None:
    from meco_callbacks.cli.plot import loss_curve

    log = tmp_path / 'train.log'
    log.write_text(''.join(block(b, 3, 4.0 - b / 10, 70 * (b - 1)) for b in (1, 2, 3)))  # 70 real tokens a batch
    run = read_run_log(log, 'meco')

    assert loss_curve(run) == ([0, 70, 140], [3.9, 3.8, 3.7])
    assert loss_curve(run, slots_per_batch=128) == ([0, 128, 256], [3.9, 3.8, 3.7])
