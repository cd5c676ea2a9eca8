"""core.jsonstore: the on-disk dict behind the latency cache, the teacher summaries and the FLOPs memo."""

import json

import pytest

from kdcompress.core.jsonstore import JsonStore
from kdcompress.select.cache import LatencyCache


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "\xff\xfe", ""])
def test_a_broken_file_reads_as_empty_and_is_replaced_on_save(tmp_path, text):
    path = tmp_path / "s.json"
    path.write_bytes(text.encode("latin-1"))
    st = JsonStore(path)
    assert st.entries == {} and st.get_json("a") is None and not st.dirty
    st.put_json("a", [1, 2])
    assert st.dirty
    st.save()
    assert json.loads(path.read_text()) == {"a": [1, 2]} and not st.dirty


def test_two_processes_keep_each_others_entries(tmp_path):
    # two stores opened on the same file before either saved: the second save used to drop the first's
    path = tmp_path / "latency.json"
    a, b = JsonStore(path), JsonStore(path)
    a.put_json("from_a", 1)
    b.put_json("from_b", 2)
    b.put_json("both", "b")
    a.put_json("both", "a")
    a.save()
    b.save()
    assert json.loads(path.read_text()) == {"from_a": 1, "from_b": 2, "both": "b"}  # the later save's own put wins
    assert b.entries == {"from_a": 1, "from_b": 2, "both": "b"}
    assert JsonStore(path).get_json("from_a") == 1


def test_no_puts_no_write_and_disabled_never_reads_or_writes(tmp_path):
    path = tmp_path / "s.json"
    JsonStore(path).save()
    assert not path.exists()
    path.write_text('{"k": 1}')
    off = JsonStore(path, enabled=False)
    assert off.get_json("k") is None
    off.put_json("k", 2)
    off.save()
    assert json.loads(path.read_text()) == {"k": 1}


def test_an_unwritable_store_is_skipped_and_keeps_its_puts(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache directory should be")  # unwritable for root too
    st = JsonStore(blocker / "s.json")
    st.put_json("k", 1)
    st.save()  # no exception: the store only saves time
    assert st.dirty and st.get_json("k") == 1 and blocker.read_text().startswith("a file")


def test_latency_cache_entries_survive_a_concurrent_writer(tmp_path):
    from kdcompress.runtime.ortbench import LatencyStats

    path = tmp_path / "latency.json"
    stats = LatencyStats(1.0, 1.1, 1.2, 1.05, 0.9, 100, 1, 950.0)
    a, b = LatencyCache(path), LatencyCache(path)
    a.put("ka", stats, confirmed=True, draws=[stats])
    b.put("kb", stats)
    a.save()
    b.save()
    again = LatencyCache(path)
    assert again.get("ka") == stats and again.confirmed("ka") and again.draws("ka") == [stats]
    assert again.get("kb") == stats and not again.confirmed("kb")
