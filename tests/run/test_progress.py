"""Long steps without iterations still show that they are working."""

import time

from factrace.run.progress import progress_step
from factrace.run.scan import ScanConfig, scan


def test_progress_step_ticks_with_its_elapsed_time(capsys):
    with progress_step("fitting R^-1/2", tick_s=0.02):
        time.sleep(0.3)
    err = capsys.readouterr().err
    assert "fitting R^-1/2: 00:00" in err
    assert err.count("\r") >= 5  # redrawn while the step ran, not only at its start
    with progress_step("quiet", enabled=False):
        pass
    assert capsys.readouterr().err == ""


def test_scan_shows_the_r_fit_and_the_query_encoding(world, tmp_path, capsys):
    from factrace.config import variant_config

    scan(ScanConfig(model=world["model"], corpus=world["corpus"], queries=world["queries"],
                    optimizer_state=world["optimizer"], top_k=3, progress=True,
                    encoder=variant_config("trackstar", dim=64, train_examples=16)))
    err = capsys.readouterr().err
    assert "R_train's eigenbasis (d = 64)" in err and "encoding queries" in err
    assert "R_eval and λ from" in err


def test_a_one_shard_scan_moves_its_bar_by_rows_and_states_the_plan(world, capsys, monkeypatch):
    """A corpus smaller than one shard: the bar counts rows batch by batch, not 0/1 shards."""
    from factrace.config import variant_config
    from factrace.run import progress as progress_module

    updates = []
    real = progress_module.tqdm

    class Recording(real):
        def update(self, n=1):
            if self.unit == "row":
                updates.append(n)
            return super().update(n)

    monkeypatch.setattr(progress_module, "tqdm", Recording)
    scan(ScanConfig(model=world["model"], corpus=world["corpus"], queries=world["queries"],
                    optimizer_state=world["optimizer"], top_k=3, progress=True,
                    encoder=variant_config("trackstar", dim=64, train_examples=16,
                                           batch_tokens=256)))
    err = capsys.readouterr().err
    rows = len(world["rows"])
    assert sum(updates) == rows and len([u for u in updates if u > 0]) > 2
    assert f"R_train from 16 passages (--train-examples), then the corpus pass over {rows}" in err
    assert "the corpus pass should take about" in err
