"""The zoo's shared pooled head (students/head.py): every family composes it, and the state_dict keys are
those the families had before the head was shared, so existing checkpoints still load."""

from __future__ import annotations

import torch

from kdcompress.core.spec import InputSpec
from kdcompress.students.head import PooledHead
from kdcompress.students.registry import STUDENTS, build_student

SMALL = InputSpec((3, 16, 16), (0.5,) * 3, (0.25,) * 3)


def test_every_cifar_family_uses_the_shared_head_with_unchanged_keys():
    families = {}
    for name in STUDENTS.names():
        spec = STUDENTS.get(name)
        if spec.max_input is not None:
            families.setdefault(spec.family, name)
    assert len(families) >= 6
    x = torch.randn(2, 3, 16, 16)
    for family, name in families.items():
        m = build_student(name, 3, SMALL).eval()
        assert isinstance(m, PooledHead), family
        keys = list(m.state_dict())
        # the head adds no weights of its own: the classifier is still fc.weight / fc.bias, nothing under pre.
        assert keys[-2:] == ["fc.weight", "fc.bias"] and not any(k.startswith(("pre.", "pool.")) for k in keys), family
        with torch.no_grad():
            emb = m.forward_head(m.forward_features(x), pre_logits=True)
            assert torch.equal(m.get_classifier()(emb), m(x)) and emb.shape == (2, m.embed_dim)


def test_a_checkpoint_written_before_the_shared_head_loads(tmp_path):
    # tinycnn_w8's keys as the family wrote them before students/head.py existed
    old_keys = ["features.0.weight", "features.1.weight", "features.1.bias", "features.1.running_mean",
                "features.1.running_var", "features.1.num_batches_tracked", "features.3.weight", "features.4.weight",
                "features.4.bias", "features.4.running_mean", "features.4.running_var",
                "features.4.num_batches_tracked", "fc.weight", "fc.bias"]
    m = build_student("tinycnn_w8", 3, SMALL)
    assert list(m.state_dict()) == old_keys
    state = {k: torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v
             for k, v in m.state_dict().items()}
    fresh = build_student("tinycnn_w8", 3, SMALL)
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(fresh.fc.weight, state["fc.weight"])
