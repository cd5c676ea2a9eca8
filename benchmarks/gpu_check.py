"""The GPU check's steps (benchmarks/gpu_check.sh is the entry point; see its header). Every step runs in this
one process (kdcompress's CLI through typer's runner, throughput.py's main), so the --dry-run in the test
suite pays the imports once instead of once a step."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent


class Failed(Exception):
    pass


class Check:
    def __init__(self, dry: bool, work: Path):
        self.dry, self.work = dry, work
        self.rows: list[tuple[str, str, float, str]] = []
        if dry:
            self.device, self.provider = "cpu", "cpu"
            self.data = "synthetic:classes=10,size=8,channels=3,n=200"
            self.t_arch, self.student, self.t_epochs, self.epochs, self.batch = "resnet8", "tinycnn_w8", 1, 1, 32
            self.throughput = ["--device", "cpu", "--batch", "8", "--steps", "1", "--warmup", "0",
                               "--train-size", "16", "--rounds", "1", "--methods", "kd,ickd"]
        else:
            self.device, self.provider = "cuda", "cuda"
            self.data = "synthetic:classes=10,size=32,channels=3,n=6000"
            self.t_arch, self.student, self.t_epochs, self.epochs, self.batch = "resnet32x4", "resnet8x4", 3, 2, 128
            self.throughput = ["--device", "cuda", "--rounds", "3"]

    # ------------------------------------------------------------------ plumbing
    def step(self, name: str, fn: Callable[[], str | None]) -> bool:
        t0 = time.perf_counter()
        try:
            note = fn() or ""
            self.rows.append((name, "PASS", time.perf_counter() - t0, note))
            return True
        except Failed as e:
            self.rows.append((name, "FAIL", time.perf_counter() - t0, str(e)[:160]))
        except Exception as e:  # a step's bug is that step's failure, never the end of the check
            (self.work / f"{name}.traceback").write_text(traceback.format_exc())
            self.rows.append((name, "FAIL", time.perf_counter() - t0, f"{type(e).__name__}: {e}"[:160]))
        return False

    def kd(self, name: str, *args: str) -> dict:
        """`kdcompress ARGS --json` in this process; its JSON, or Failed with the error line."""
        from typer.testing import CliRunner

        from kdcompress.cli import app

        r = CliRunner().invoke(app, [*args, "--json"])
        (self.work / f"{name}.log").write_text(f"$ kdcompress {' '.join(args)} --json\n{r.stdout}\n{r.stderr}")
        if r.exit_code != 0:
            err = [ln for ln in r.stderr.splitlines() if ln.strip()] or [repr(r.exception)]
            raise Failed(f"exit {r.exit_code}: {err[-1]}")
        return json.loads(r.stdout)

    # ------------------------------------------------------------------ steps
    def doctor(self) -> str:
        d = self.kd("doctor", "doctor")
        started = {p["provider"] for p in d["onnxruntime"]["providers"] if p["starts"]}
        self.trt = "TensorrtExecutionProvider" in started
        if not self.dry:
            if not d["torch"]["cuda_available"]:
                raise Failed("torch sees no CUDA device")
            if "CUDAExecutionProvider" not in started:
                raise Failed("onnxruntime's CUDAExecutionProvider does not start (install onnxruntime-gpu)")
        gpus = ", ".join(str(g.get("name", g)) if isinstance(g, dict) else str(g) for g in d["torch"]["gpus"])
        return f"torch {d['torch']['version']}; GPUs: {gpus or 'none'}; ORT starts: {', '.join(sorted(started))}"

    def teacher(self) -> str:
        d = self.kd("teacher", "teacher", "train", "--data", self.data, "--arch", self.t_arch, "--epochs",
                    str(self.t_epochs), "--device", self.device, "--out", str(self.work / "teacher.pt"))
        return f"{self.t_arch}, test accuracy {d['test_accuracy']:.3f}"

    def distill(self, out: str, *extra: str) -> dict:
        d = self.kd(out, "distill", "--teacher", str(self.work / "teacher.pt"), "--data", self.data, "--student",
                    self.student, "--epochs", str(self.epochs), "--set", f"train.batch_size={self.batch}",
                    "--device", self.device, "--provider", self.provider, "--fp16", "--out", str(self.work / out),
                    # the dry run's 1-epoch teacher on tiny data is near chance by design: it checks plumbing
                    *(("--allow-weak-teacher",) if self.dry else ()), *extra)
        if d["device"].split(":")[0] != self.device:
            raise Failed(f"trained on {d['device']}, not {self.device}")
        self.reports[out] = d
        return d

    def distill_note(self, d: dict) -> str:
        secs = sum(r["train_seconds"] for r in d["training"]["history"])
        return f"test acc {d['student']['accuracy']:.3f}; train {secs:.1f} s"

    def cached(self) -> str:
        d = self.distill("d_cache", "--set", "train.teacher_cache=views", "--set", "train.cache_views=4")
        rec = self.work / "d_cache" / "teacher_cache.json"
        if not rec.is_file():
            raise Failed("no teacher_cache.json in the run directory")
        eager = self.reports.get("d_eager")
        ratio = ""
        if eager:
            t = [sum(r["train_seconds"] for r in x["training"]["history"]) for x in (d, eager)]
            ratio = f"; train time {t[0] / t[1]:.2f}x of online" if t[1] > 0 else ""
        return f"cache_views=4; {self.distill_note(d)}{ratio}"

    def run_throughput(self) -> str:
        sys.path.insert(0, str(HERE))
        import throughput

        buf = io.StringIO()
        argv = sys.argv
        sys.argv = ["throughput.py", *self.throughput]
        try:
            with contextlib.redirect_stdout(buf):
                throughput.main()
        finally:
            sys.argv = argv
        text = buf.getvalue()
        (self.work / "throughput.log").write_text(text)
        kd = re.search(r"\| kdcompress kd\s+\|[^|]+\|[^|]+\|\s*([0-9.]+)\s*\|", text)
        ic = re.search(r"IC-KD / KD step time: ([0-9.]+)", text)
        self.kd_ratio = float(kd.group(1)) if kd else math.nan
        self.ickd_ratio = float(ic.group(1)) if ic else math.nan
        return f"kd {self.kd_ratio:.2f}x baseline; IC-KD/KD {self.ickd_ratio:.3f}"

    def goal(self, name: str, value: float, op: str, limit: float) -> None:
        ok = not math.isnan(value) and (value >= limit if op == ">=" else value <= limit)
        state = "info" if self.dry else ("PASS" if ok else "FAIL")
        extra = "; not checked on a CPU" if self.dry else ""
        self.rows.append((name, state, 0.0, f"{value:.3f} (goal {op} {limit}{extra})"))

    def select(self) -> str:
        d = self.kd("select", "select", "--teacher", str(self.work / "teacher.pt"), "--provider", self.provider,
                    "--candidates", f"{self.student},tinycnn_w16", "--out", str(self.work / "select"))
        chosen = (d.get("chosen") or {}).get("name", "none (no budget given)")
        return f"{len(d['candidates'])} candidates measured with provider {self.provider}; chose {chosen}"

    def validate(self, provider: str) -> str:
        run = self.work / "d_eager"
        d = self.kd(f"validate_{provider}", "validate", "--onnx", str(run / "student.onnx"), "--onnx",
                    str(run / "student.fp16.onnx"), "--data", self.data, "--teacher", str(self.work / "teacher.pt"),
                    "--checkpoint", str(run / "student.pt"), "--provider", provider,
                    "--out", str(self.work / f"validate_{provider}"))
        self.validation = d
        return ", ".join(f"{v['variant']} acc {v['accuracy']:.3f}" for v in d["variants"])

    def fp16_parity(self) -> str:
        rows = {v["variant"]: v for v in self.validation["variants"]}
        if "fp16" not in rows:
            raise Failed("no fp16 variant was validated")
        p = rows["fp16"]["parity"]
        if not p.get("passed", False):
            raise Failed(f"fp16 parity failed: {json.dumps(p)[:120]}")
        return f"fp16 top-1 agreement {p.get('top1_agreement', float('nan')):.4f}"

    # ------------------------------------------------------------------ the run
    def run(self) -> int:
        self.reports: dict[str, dict] = {}
        self.trt = False
        self.step("doctor", self.doctor)
        self.step("teacher", self.teacher)
        self.step("distill_eager",
                  lambda: "bf16 autocast + channels_last; " + self.distill_note(self.distill("d_eager")))
        backend = os.environ.get("KDCOMPRESS_COMPILE_BACKEND", "inductor")
        self.step("distill_compile", lambda: f"torch.compile ({backend}); "
                  + self.distill_note(self.distill("d_compile", "--compile")))
        self.step("teacher_cache", self.cached)
        if self.step("throughput", self.run_throughput):
            self.goal("kd_vs_baseline", self.kd_ratio, ">=", 2.0)
            self.goal("ickd_over_kd", self.ickd_ratio, "<=", 1.10)
        self.step("select", self.select)
        if self.step(f"validate_{self.provider}", lambda: self.validate(self.provider)):
            self.step("fp16_parity", self.fp16_parity)
        if self.trt:
            self.step("validate_tensorrt", lambda: self.validate("tensorrt"))
        elif not self.dry:
            self.rows.append(("validate_tensorrt", "skip", 0.0, "TensorrtExecutionProvider does not start here"))
        return self.summary()

    def summary(self) -> int:
        failed = sum(state == "FAIL" for _, state, _, _ in self.rows)
        where = "dry run on the CPU" if self.dry else f"device {self.device}"
        print(f"\nkdcompress GPU check ({where}; {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}; "
              f"logs in {self.work})")
        print(f"| {'step':18s} | {'status':6s} | {'s':>6s} | detail")
        print(f"|{'-' * 20}|{'-' * 8}|{'-' * 8}|{'-' * 40}")
        for name, state, secs, note in self.rows:
            print(f"| {name:18s} | {state:6s} | {secs:6.1f} | {note}")
        print(f"gpu_check: {'all steps passed' if not failed else f'{failed} step(s) failed'}")
        return 1 if failed else 0


def main() -> int:
    dry = "--dry-run" in sys.argv[1:]
    work = Path(os.environ["GPU_CHECK_DIR"])
    work.mkdir(parents=True, exist_ok=True)
    return Check(dry, work).run()


if __name__ == "__main__":
    sys.exit(main())
