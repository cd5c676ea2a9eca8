"""`kdcompress profile`: each model timed in several fresh processes, round the models, slowest kept."""

import json

import pytest
from typer.testing import CliRunner

from kdcompress.cli import app
from kdcompress.runtime.freshbench import slowest
from kdcompress.core.fsguard import file_sha256
from kdcompress.runtime.latencytable import MANIFEST_FORMAT, profile_dir, read_table, table_stats
from kdcompress.runtime.ortbench import LatencyStats, SessionSettings


def stats(p50, p90=None, mean=None, mn=None, iters=100):
    p90 = p90 or 1.2 * p50
    mean = mean or 1.05 * p50
    return LatencyStats(p50, p90, 1.5 * p50, mean, mn or 0.9 * p50, iters, 1, 1000.0 / mean)


def test_slowest_takes_each_statistic_at_its_worst():
    a = LatencyStats(1.0, 2.0, 3.0, 1.5, 0.8, 100, 1, 1000 / 1.5)
    b = LatencyStats(1.2, 1.8, 3.5, 1.4, 0.9, 200, 1, 1000 / 1.4)
    s = slowest([a, b])
    assert (s.p50, s.p90, s.p99, s.mean, s.min, s.iters, s.batch) == (1.2, 2.0, 3.5, 1.5, 0.9, 300, 1)
    assert s.throughput == pytest.approx(1000 / 1.5)  # the slowest mean's
    assert s.min <= s.p50 <= s.p90 <= s.p99
    assert slowest([a]) == a


def ladder(tmp_path, keys):
    models = []
    for k in keys:
        f = tmp_path / f"{k.replace(':', '.')}.onnx"
        f.write_bytes(k.encode())  # never loaded: the draws are fake
        models.append({"key": k, "name": k.split(":")[0], "precision": k.split(":")[1], "params": 1, "flops": 2,
                       "file": f.name, "sha256": file_sha256(f)})
    (tmp_path / "manifest.json").write_text(json.dumps({"format": MANIFEST_FORMAT, "input_shape": [1, 8, 8],
                                                        "num_classes": 3, "batch": 1, "models": models}))
    return tmp_path


def test_draws_go_round_the_models_and_the_slowest_is_the_figure(tmp_path):
    d = ladder(tmp_path, ["a:fp32", "b:fp32", "c:int8"])
    order = []
    values = {"a:fp32": [1.0, 1.1, 1.05], "b:fp32": [2.0, 2.0, 2.0], "c:int8": [0.5, 0.9, 0.6]}

    def draw(path, provider, shape, settings, min_time_s):
        key = path.name.replace(".onnx", "").replace(".", ":")
        order.append(key)
        assert provider == "cpu" and shape == (1, 1, 8, 8) and settings == SessionSettings(1) and min_time_s > 0
        return stats(values[key][sum(k == key for k in order) - 1])

    table = profile_dir(d, processes=3, draw=draw)
    assert order == ["a:fp32", "b:fp32", "c:int8"] * 3  # round the models, not one model's block after another
    assert table == read_table(d / "latency.json")
    assert table["processes"] == 3 and table["stat"] == "p50"
    for key, vals in values.items():
        m = table["models"][key]
        assert [x["p50"] for x in m["draws"]] == vals
        assert table_stats(m).p50 == max(vals) and m["settings"] == SessionSettings(1).to_json()
    assert table["unstable"] == {"c:int8": 1.8}  # 0.9 / 0.5; a's 1.1x and b's 1.0x are within UNSTABLE


def test_profile_warns_of_an_unstable_machine_and_refuses_zero_processes(tmp_path, monkeypatch):
    import kdcompress.runtime.latencytable as lt

    d = ladder(tmp_path, ["a:fp32"])
    it = iter([1.0, 2.0])
    monkeypatch.setattr(lt, "draw_file", lambda *a: stats(next(it)))
    r = CliRunner().invoke(app, ["profile", str(d), "--no-tune", "--processes", "2"])
    assert r.exit_code == 0, r.output
    err, out = " ".join(r.stderr.split()), " ".join(r.stdout.split())
    assert "warning: a:fp32's 2 processes measured up to 2.00x apart (p50)" in err and "slowest of 2 process(es)" in out
    assert read_table(d / "latency.json")["models"]["a:fp32"]["latency_ms"]["p50"] == 2.0

    (d / "latency.json").unlink()
    r = CliRunner().invoke(app, ["profile", str(d), "--processes", "0"])
    assert r.exit_code == 2 and "--processes must be at least 1" in r.stderr
    assert not (d / "latency.json").exists()  # a refused command writes nothing


def test_profile_runs_one_typed_job_and_reports_it(tmp_path, monkeypatch):
    import json

    import kdcompress.runtime.latencytable as lt

    d = ladder(tmp_path, ["a:fp32"])
    monkeypatch.setattr(lt, "draw_file", lambda *a: stats(1.0))
    out = tmp_path / "t.json"
    r = CliRunner().invoke(app, ["profile", str(d), "--no-tune", "--processes", "2", "--threads", "1",
                                 "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["job"] == {"format": "kdcompress.profile-job/1", "directory": str(d),
                                           "provider": "cpu", "threads": 1, "tune": False, "processes": 2,
                                           "out": str(out)}
    r = CliRunner().invoke(app, ["profile", str(d), "--threads", "0", "--out", str(tmp_path / "u.json")])
    assert r.exit_code == 2 and "--threads must be at least 1" in r.stderr and not (tmp_path / "u.json").exists()
