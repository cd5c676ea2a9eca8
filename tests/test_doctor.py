"""`kdcompress doctor`: real versions and providers of this machine, provider start-up probes, and the
known-conflict warnings (driven with fake distribution lists)."""

from __future__ import annotations

import json

import onnxruntime as ort
import torch
from typer.testing import CliRunner

from kdcompress.cli import app
from kdcompress.commands import doctor
from kdcompress.core.system import cpu_limit

runner = CliRunner()


def test_doctor_json_reports_this_machine():
    r = runner.invoke(app, ["doctor", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)  # stdout is one JSON object and nothing else
    assert info["torch"]["version"] == torch.__version__
    assert info["torch"]["cuda_available"] == torch.cuda.is_available()
    assert len(info["torch"]["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert info["onnxruntime"]["version"] == ort.__version__
    assert info["onnxruntime"]["available_providers"] == ort.get_available_providers()
    probes = {p["provider"]: p for p in info["onnxruntime"]["providers"]}
    assert set(probes) == set(ort.get_available_providers())
    assert probes["CPUExecutionProvider"]["starts"] is True
    assert info["cpu"]["usable"] == cpu_limit() and info["cpu"]["usable"] <= info["cpu"]["count"]
    assert info["faiss"]["installed"] in (True, False)
    for w in doctor.conflict_warnings(doctor.installed_distributions()):
        assert w in info["warnings"]


def test_provider_probe_detects_a_provider_that_does_not_start():
    model = doctor._tiny_onnx()
    ok = doctor.probe_provider(ort, model, "CPUExecutionProvider")
    assert ok["starts"] and ok["note"] == ""
    # not installed here (or installed without a GPU): ORT falls back to the CPU, which must not count
    bad = doctor.probe_provider(ort, model, "CUDAExecutionProvider" if not torch.cuda.is_available()
                                else "NoSuchExecutionProvider")
    assert bad["starts"] is False and bad["note"]


def test_conflict_warnings():
    assert doctor.conflict_warnings({"onnxruntime": "1.31.1", "torch": "2.14.1"}) == []
    w = doctor.conflict_warnings({"onnxruntime": "1.31.1", "onnxruntime-gpu": "1.31.1", "faiss-cpu": "1.15.1"})
    assert len(w) == 1 and "onnxruntime 1.31.1 and onnxruntime-gpu 1.31.1" in w[0] and "`onnxruntime`" in w[0]
    w = doctor.conflict_warnings({"faiss-cpu": "1.15.1", "faiss-gpu-cu12": "1.10.0"})
    assert len(w) == 1 and "faiss-cpu" in w[0] and "faiss-gpu-cu12" in w[0]


def test_doctor_warns_about_both_onnxruntimes_in_table_and_json(monkeypatch):
    real = doctor.installed_distributions()
    monkeypatch.setattr(doctor, "installed_distributions", lambda: {**real, "onnxruntime-gpu": "1.31.1"})
    info = json.loads(runner.invoke(app, ["doctor", "--json"]).stdout)
    assert any("onnxruntime-gpu 1.31.1" in w for w in info["warnings"])
    assert info["onnxruntime"]["distributions"]["onnxruntime-gpu"] == "1.31.1"
    r = runner.invoke(app, ["doctor"])
    assert r.exit_code == 0 and "warning:" in r.stdout and "onnxruntime-gpu" in r.stdout
    assert "CPUExecutionProvider" in r.stdout and "starts" in r.stdout
