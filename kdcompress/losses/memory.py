"""The IC-KD memory bank: the frozen teacher's view of the whole training split, searchable by similarity.

Row n of the bank is training sample n (its dataset index): the teacher's penultimate feature, L2-normalised
and stored in fp16; the teacher's logits (fp32, they are distillation targets) and the label. It is built
once from un-augmented images (the teacher is frozen, so the bank never goes stale; methods.md §6 and §11.6).

Retrieval is exact inner product (= cosine on unit vectors):
  * on CPU with faiss IndexFlatIP over the fp16 values widened to fp32. faiss's BLAS path is used only for
    query batches of at least `distance_compute_blas_threshold` rows, 128,000 by default in this build,
    which makes a 128-query batch about 5x slower than a plain matmul (ENVIRONMENT.md §6); we set it to 20;
  * on a GPU (or without faiss) with a chunked torch matmul + top-k on the bank's device, so the bank stays
    resident and retrieval never leaves the device. faiss-gpu is not used: it could not be tested here.
A query asks for the top K+1 and drops the query's own dataset index (by index, not by similarity: an
exact duplicate image scores like the sample itself), keeping K.

Class-conditional retrieval (`side="same"` / `side="other"`, the IC-KD default; methods.md §6.7): the K
nearest entries WITH the query's label, or the K nearest with ANOTHER label, each exact. The bank keeps one
sub-bank per class (a faiss IndexFlatIP, or the class's fp16 rows for the torch backend): "same" searches the
query's own class, "other" searches every other class's sub-bank and merges, so the total work is one pass
over the bank. A row that comes up short (a class with fewer than K+1 members) is padded with the query's own
index and similarity PAD_SIM; callers mask those entries out by `ids == own`.

Two modes (see losses/ickd.py): `dynamic` queries with the teacher feature of the current augmented view at
every step (`neighbours`), `static` looks up neighbours computed once per sample from the stored features
(`static_neighbours`, then a gather by batch index).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from ..core.types import TeacherOutputs

FAISS_BLAS_THRESHOLD = 20
SIDES = ("same", "other")  # class-conditional retrieval; None = the joint top-K over the whole bank
PAD_SIM = -3.0  # similarity of padding entries: below any cosine
_TORCH_CHUNK_ROWS = 65_536  # bank rows per matmul chunk: bounds the (B, rows) score matrix
_STATIC_QUERY_BATCH = 256


def _faiss() -> Any | None:
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def drop_own(ids: Tensor, sims: Tensor, own: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """From (B, K+1) results sorted by similarity, remove the entry equal to the row's own index (if
    retrieved) and keep the first k of the rest, in order."""
    other = ids != own.view(-1, 1)
    # A stable sort of "is own" (0 first) keeps the retrieval order of the others and moves self last.
    pos = torch.argsort((~other).to(torch.int8), dim=1, stable=True)[:, :k]
    return ids.gather(1, pos), sims.gather(1, pos)


def _faiss_search(index: Any, query: Tensor, k: int) -> tuple[Tensor, Tensor]:
    q = query.detach().to("cpu", torch.float32).contiguous().numpy()
    faiss = _faiss()
    old = faiss.cvar.distance_compute_blas_threshold  # scoped: the caller's setting comes back
    faiss.cvar.distance_compute_blas_threshold = FAISS_BLAS_THRESHOLD
    try:
        sims, ids = index.search(q, k)
    finally:
        faiss.cvar.distance_compute_blas_threshold = old
    return torch.from_numpy(sims), torch.from_numpy(ids).long()


def _table_key(side: str | None, k: int) -> str:
    return f"{side}.{k}" if side else str(k)


class MemoryBank:
    """Teacher features (fp16, unit length), logits (fp32) and labels of the N training samples, on `device`."""

    def __init__(self, feats: Tensor, logits: Tensor, labels: Tensor, device: torch.device | str = "cpu",
                 backend: str = "auto"):
        if not (feats.ndim == 2 and logits.ndim == 2 and labels.ndim == 1
                and feats.shape[0] == logits.shape[0] == labels.shape[0]):
            raise ValueError(f"bank tensors disagree: feats {tuple(feats.shape)}, logits {tuple(logits.shape)}, "
                             f"labels {tuple(labels.shape)}")
        device = torch.device(device)
        self.feats = feats.to(device=device, dtype=torch.float16).contiguous()
        self.logits = logits.to(device=device, dtype=torch.float32).contiguous()
        self.labels = labels.to(device=device, dtype=torch.int64).contiguous()
        self.device = device
        if backend == "auto":
            backend = "faiss" if device.type == "cpu" and _faiss() is not None else "torch"
        if backend not in ("faiss", "torch"):
            raise ValueError(f"backend must be auto, faiss or torch, got {backend!r}")
        if backend == "faiss" and device.type != "cpu":
            raise ValueError("the faiss backend searches a CPU bank; a GPU bank uses the torch backend")
        self.backend = backend
        self._index = None
        if backend == "faiss":
            faiss = _faiss()
            if faiss is None:
                raise ValueError("backend 'faiss' requested but faiss is not installed")
            self._index = faiss.IndexFlatIP(self.dim)
            self._index.add(self.feats.float().numpy())
        self._static: dict[str, tuple[Tensor, Tensor]] = {}  # _table_key(side, k) -> (ids, sims)
        self._memo: dict[str | None, tuple[Any, ...]] = {}
        self._subs: list[tuple[Tensor, Any]] | None = None
        self._cpu_state: dict[str, Tensor] | None = None
        self.searches = 0  # number of search calls (one per query batch); tests and benchmarks read it

    # ------------------------------------------------------------------------------------------ build

    @classmethod
    def from_teacher(cls, out: TeacherOutputs, device: torch.device | str = "cpu",
                     backend: str = "auto") -> MemoryBank:
        return cls(F.normalize(out.embed.float(), dim=1), out.logits, out.labels, device, backend)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def dim(self) -> int:
        return int(self.feats.shape[1])

    # ------------------------------------------------------------------------------------------ save / load

    def state(self, static_ks: tuple[int, ...] = (), side: str | None = None) -> dict[str, Tensor]:
        """CPU tensors to save. The same bank returns the same tensor objects every time, so two losses
        sharing it save its storage once (torch.save writes a shared storage a single time)."""
        if self._cpu_state is None:
            self._cpu_state = {"feats": self.feats.cpu(), "logits": self.logits.cpu(), "labels": self.labels.cpu()}
        out = dict(self._cpu_state)
        for k in static_ks:
            key_i, key_s = f"static_ids.{_table_key(side, k)}", f"static_sims.{_table_key(side, k)}"
            if key_i not in self._cpu_state:
                ids, sims = self.static_neighbours(k, side)
                self._cpu_state[key_i], self._cpu_state[key_s] = ids.cpu(), sims.cpu()
            out[key_i], out[key_s] = self._cpu_state[key_i], self._cpu_state[key_s]
        return out

    @classmethod
    def from_state(cls, state: dict[str, Tensor], device: torch.device | str = "cpu",
                   backend: str = "auto") -> MemoryBank:
        bank = cls(state["feats"], state["logits"], state["labels"], device, backend)
        bank.adopt_static(state)
        return bank

    def adopt_static(self, state: dict[str, Tensor]) -> None:
        """Take the precomputed static neighbour tables found in `state` (keys static_ids.K for the joint
        top-K, static_ids.same.K / static_ids.other.K for class-conditional retrieval)."""
        for key, ids in state.items():
            if key.startswith("static_ids."):
                tkey = key[len("static_ids."):]
                k = int(tkey.rpartition(".")[2])
                if tkey not in self._static:
                    sims = state[f"static_sims.{tkey}"]
                    if tuple(ids.shape) != (len(self), k):
                        raise ValueError(f"static neighbour table {key} has shape {tuple(ids.shape)}, "
                                         f"expected {(len(self), k)}")
                    self._static[tkey] = (ids.to(self.device, torch.int64), sims.to(self.device, torch.float32))

    # ------------------------------------------------------------------------------------------ search

    def _as_query(self, embed: Tensor) -> Tensor:
        # Rounded to the bank's fp16, so an un-augmented view scores exactly as its stored entry does and
        # dynamic retrieval without augmentation agrees with static retrieval.
        return F.normalize(embed.detach().float(), dim=1).half().float()

    def search(self, query: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Exact top-k inner products of unit-length fp32 queries (B, d) against the bank, self included.
        Returns (sims (B, k) fp32, ids (B, k) int64), best first, on the bank's device."""
        if not 1 <= k <= len(self):
            raise ValueError(f"k={k} must be in [1, {len(self)}] for a bank of {len(self)} samples")
        if query.ndim != 2 or query.shape[1] != self.dim:
            raise ValueError(f"query of shape {tuple(query.shape)} for a bank of dimension {self.dim}")
        self.searches += 1
        if self._index is not None:
            return _faiss_search(self._index, query, k)
        q = query.detach().to(self.device, torch.float32)
        best_s: Tensor | None = None
        best_i: Tensor | None = None
        for start in range(0, len(self), _TORCH_CHUNK_ROWS):
            chunk = self.feats[start:start + _TORCH_CHUNK_ROWS].float()
            s, i = (q @ chunk.T).topk(min(k, chunk.shape[0]), dim=1)
            i = i + start
            if best_s is None or best_i is None:
                best_s, best_i = s, i
            else:
                cat_s, cat_i = torch.cat([best_s, s], 1), torch.cat([best_i, i], 1)
                best_s, pos = cat_s.topk(k, dim=1)
                best_i = cat_i.gather(1, pos)
        assert best_s is not None and best_i is not None
        return best_s, best_i

    def _sub_banks(self) -> list[tuple[Tensor, Any]]:
        """Per class c: (the global ids of its rows, a searcher over them), built on first use."""
        if self._subs is None:
            subs: list[tuple[Tensor, Any]] = []
            for c in range(int(self.labels.max()) + 1 if len(self) else 0):
                ids = (self.labels == c).nonzero().squeeze(1)
                rows = self.feats[ids]
                if self.backend == "faiss" and len(ids):
                    index = _faiss().IndexFlatIP(self.dim)
                    index.add(rows.float().numpy())
                    subs.append((ids, index))
                else:
                    subs.append((ids, rows))
            self._subs = subs
        return self._subs

    def _search_class(self, c: int, query: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Exact top-min(k, n_c) of the queries against class c's rows: (sims, global ids), best first."""
        subs = self._sub_banks()
        ids_c, searcher = subs[c] if c < len(subs) else (self.labels[:0], None)
        k = min(k, int(ids_c.shape[0]))
        if k == 0:
            return query.new_zeros((query.shape[0], 0)), torch.zeros((query.shape[0], 0), dtype=torch.int64)
        if isinstance(searcher, Tensor):
            sims, local = (query.to(self.device, torch.float32) @ searcher.float().T).topk(k, dim=1)
        else:
            sims, local = _faiss_search(searcher, query, k)
        return sims.to(self.device), ids_c[local.to(self.device)]

    def class_search(self, query: Tensor, own: Tensor, y: Tensor, k: int, side: str) -> tuple[Tensor, Tensor]:
        """Class-conditional exact retrieval: for each unit-length query, the k nearest bank entries with
        label == y (side "same") or label != y (side "other"), the own index `own` excluded. Short rows are
        padded with `own` at PAD_SIM. Returns (ids (B, k), sims (B, k)) on the bank's device.

        The candidates are laid out as one (B, W) block per searched class, then k padding columns (-inf at
        `own`), and the best k of them taken with one top-k: "same" writes each class's queries into their
        rows of one preallocated block, "other" concatenates the per-class results and masks the query's own
        class in one step (fewer small tensor ops than a full-size block per class; same candidates)."""
        if side not in SIDES:
            raise ValueError(f"side must be one of {', '.join(SIDES)}, got {side!r}")
        self.searches += 1
        own, y = own.to(self.device).long(), y.to(self.device).long()
        b = query.shape[0]
        neg_inf = float("-inf")
        if side == "same":
            found = []
            for c in y.unique().tolist():
                rows = (y == c).nonzero().squeeze(1)
                s, i = self._search_class(int(c), query[rows], k + 1)
                found.append((rows, s, i))
            width = sum(s.shape[1] for _, s, _ in found)
            sims = torch.full((b, width + k), neg_inf, device=self.device)
            ids = own.view(-1, 1).expand(b, width + k).clone()
            start = 0
            for rows, s, i in found:
                w = s.shape[1]
                sims[rows, start:start + w], ids[rows, start:start + w] = s, i
                start += w
        else:
            cand_s, cand_i, cand_c = [], [], []
            for c in range(len(self._sub_banks())):
                s, i = self._search_class(c, query, k)
                cand_s.append(s)
                cand_i.append(i)
                cand_c.append(torch.full((s.shape[1],), c, dtype=torch.int64, device=self.device))
            cand_s.append(torch.full((b, k), neg_inf, device=self.device))  # padding: at least k candidates
            cand_i.append(own.view(-1, 1).expand(b, k))
            cand_c.append(torch.full((k,), -1, dtype=torch.int64, device=self.device))
            sims, ids = torch.cat(cand_s, 1), torch.cat(cand_i, 1)
            sims = torch.where(torch.cat(cand_c).view(1, -1) == y.view(-1, 1), neg_inf, sims)
        sims = torch.where(ids == own.view(-1, 1), neg_inf, sims)
        sims, pos = sims.topk(k, dim=1)
        ids = ids.gather(1, pos)
        pad = torch.isinf(sims)
        return torch.where(pad, own.view(-1, 1), ids), torch.where(pad, PAD_SIM, sims)

    def neighbours(self, embed: Tensor, own: Tensor, k: int, y: Tensor | None = None,
                   side: str | None = None) -> tuple[Tensor, Tensor]:
        """Dynamic retrieval: the k nearest bank entries to each (un-normalised) teacher feature, the
        query's own dataset index `own` excluded; with `side` ("same"/"other") class-conditionally against
        the labels `y` (see class_search). Returns (ids (B, k), sims (B, k)) on the bank's device.

        PICD and NICD ask with the same tensors in the same step; a one-entry memo per side (keyed on the
        identity of the `embed` and `own` tensors, whose references it holds) answers the second without
        searching."""
        m = self._memo.get(side)
        if m is not None and m[0] is embed and m[1] is own and m[2] >= k:
            return m[3][:, :k], m[4][:, :k]
        if side is None:
            sims, ids = self.search(self._as_query(embed), k + 1)
            ids, sims = drop_own(ids.to(self.device), sims.to(self.device), own.to(self.device), k)
        else:
            assert y is not None, "class-conditional retrieval needs the labels"
            ids, sims = self.class_search(self._as_query(embed), own, y, k, side)
        self._memo[side] = (embed, own, k, ids, sims)
        return ids, sims

    def static_neighbours(self, k: int, side: str | None = None) -> tuple[Tensor, Tensor]:
        """Static retrieval table: for every sample n, its k nearest other samples by stored feature (with
        `side`, class-conditionally). Computed once (per side and k) and kept; returns (ids (N, k), sims (N, k))
        on the bank's device."""
        key = _table_key(side, k)
        if key not in self._static:
            all_ids, all_sims = [], []
            for start in range(0, len(self), _STATIC_QUERY_BATCH):
                own = torch.arange(start, min(start + _STATIC_QUERY_BATCH, len(self)), device=self.device)
                q = self.feats[own].float()
                if side is None:
                    sims, ids = self.search(q, k + 1)
                    ids, sims = drop_own(ids.to(self.device), sims.to(self.device), own, k)
                else:
                    ids, sims = self.class_search(q, own, self.labels[own], k, side)
                all_ids.append(ids)
                all_sims.append(sims)
            self._static[key] = (torch.cat(all_ids), torch.cat(all_sims))
        return self._static[key]

    def static_lookup(self, index: Tensor, k: int, side: str | None = None) -> tuple[Tensor, Tensor]:
        ids, sims = self.static_neighbours(k, side)
        index = index.to(self.device)
        return ids[index], sims[index]
