"""The composition layer: the one place where stages are combined (cli -> commands -> pipeline -> stages).

    job.py        `distill`: prepare -> choose -> train -> deliver -> report, the fallback by the same phases
    jobspec.py    DistillJob: the whole distill job, typed and frozen, recorded in config.json
    prepare.py    the teacher, the data and every check before --out changes; a model's fit to the data
    choose.py     which student ships: one Decision (selection, --rank trial, --preset auto, teacher cache),
                  the precision gate and the fp32 fallback
    selection.py  the one call of select(); `kdcompress select` and --export-candidates
    trials.py     --rank trial: successive halving over the selection's pool
    autopreset.py --preset auto: paired short trials of the candidate presets
    deliver.py    the one export-and-validate (distill and export alike), stamping each file's accuracy
    exportjob.py  `kdcompress export` (ExportJob); reexport.py: the files a run's report vouches for are never changed
    validation.py `kdcompress validate` (ValidateJob); prediction.py: `kdcompress predict` (PredictJob)
    profiling.py  `kdcompress profile` (ProfileJob), on the target: no torch
    teacher.py    `kdcompress teacher train` (TeacherTrainJob); demo.py: `kdcompress demo`

This is the package's face: commands import these names from `kdcompress.pipeline`, never from a module of
it. The face is lazy (PEP 562): a name imports its own module when first asked for, so a warm `kdcompress
select` (selection.py) still runs without importing torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazyface import lazy_getattr

# name -> the module of this package that defines it
_FACE = {
    "auto_from_flags": "autopreset",
    "cache_facts": "choose",
    "distill": "job",
    "DistillJob": "jobspec",
    "run_job": "jobspec",
    "export_candidates": "selection",
    "export_job": "exportjob",
    "ExportJob": "exportjob",
    "predict_job": "prediction",
    "profile_job": "profiling",
    "ProfileJob": "profiling",
    "PredictJob": "prediction",
    "run_demo": "demo",
    "select_job": "selection",
    "SelectJob": "selection",
    "train_teacher": "teacher",
    "train_teacher_job": "teacher",
    "TeacherTrainJob": "teacher",
    "validate_job": "validation",
    "ValidateJob": "validation",
}
__all__ = sorted(_FACE)


__getattr__ = lazy_getattr(__name__, _FACE)


if TYPE_CHECKING:  # what the face gives, for type checkers and readers
    from .autopreset import auto_from_flags  # noqa: F401
    from .choose import cache_facts  # noqa: F401
    from .demo import run_demo  # noqa: F401
    from .prediction import PredictJob, predict_job  # noqa: F401
    from .profiling import ProfileJob, profile_job  # noqa: F401
    from .exportjob import ExportJob, export_job  # noqa: F401
    from .job import distill  # noqa: F401
    from .jobspec import DistillJob, run_job  # noqa: F401
    from .selection import SelectJob, export_candidates, select_job  # noqa: F401
    from .teacher import TeacherTrainJob, train_teacher, train_teacher_job  # noqa: F401
    from .validation import ValidateJob, validate_job  # noqa: F401
