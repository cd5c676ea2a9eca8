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
        self._static: dict[int, tuple[Tensor, Tensor]] = {}
        self._memo: tuple[Any, ...] | None = None
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

    def state(self, static_ks: tuple[int, ...] = ()) -> dict[str, Tensor]:
        """CPU tensors to save. The same bank returns the same tensor objects every time, so two losses
        sharing it save its storage once (torch.save writes a shared storage a single time)."""
        if self._cpu_state is None:
            self._cpu_state = {"feats": self.feats.cpu(), "logits": self.logits.cpu(), "labels": self.labels.cpu()}
        out = dict(self._cpu_state)
        for k in static_ks:
            key_i, key_s = f"static_ids.{k}", f"static_sims.{k}"
            if key_i not in self._cpu_state:
                ids, sims = self.static_neighbours(k)
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
        """Take the precomputed static neighbour tables found in `state` (keys static_ids.K)."""
        for key, ids in state.items():
            if key.startswith("static_ids."):
                k = int(key.rpartition(".")[2])
                if k not in self._static:
                    sims = state[f"static_sims.{k}"]
                    if tuple(ids.shape) != (len(self), k):
                        raise ValueError(f"static neighbour table {key} has shape {tuple(ids.shape)}, "
                                         f"expected {(len(self), k)}")
                    self._static[k] = (ids.to(self.device, torch.int64), sims.to(self.device, torch.float32))

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
            q = query.detach().to("cpu", torch.float32).contiguous().numpy()
            faiss = _faiss()
            old = faiss.cvar.distance_compute_blas_threshold  # scoped: the caller's setting comes back
            faiss.cvar.distance_compute_blas_threshold = FAISS_BLAS_THRESHOLD
            try:
                sims, ids = self._index.search(q, k)
            finally:
                faiss.cvar.distance_compute_blas_threshold = old
            return torch.from_numpy(sims), torch.from_numpy(ids).long()
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

    def neighbours(self, embed: Tensor, own: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Dynamic retrieval: the k nearest bank entries to each (un-normalised) teacher feature, the
        query's own dataset index `own` excluded. Returns (ids (B, k), sims (B, k)) on the bank's device.

        PICD and NICD ask with the same tensors in the same step; a one-entry memo (keyed on the identity
        of the `embed` and `own` tensors, whose references it holds) answers the second without searching."""
        m = self._memo
        if m is not None and m[0] is embed and m[1] is own and m[2] >= k:
            return m[3][:, :k], m[4][:, :k]
        sims, ids = self.search(self._as_query(embed), k + 1)
        ids, sims = drop_own(ids.to(self.device), sims.to(self.device), own.to(self.device), k)
        self._memo = (embed, own, k, ids, sims)
        return ids, sims

    def static_neighbours(self, k: int) -> tuple[Tensor, Tensor]:
        """Static retrieval table: for every sample n, its k nearest other samples by stored feature.
        Computed once (per k) and kept; returns (ids (N, k), sims (N, k)) on the bank's device."""
        if k not in self._static:
            all_ids, all_sims = [], []
            for start in range(0, len(self), _STATIC_QUERY_BATCH):
                own = torch.arange(start, min(start + _STATIC_QUERY_BATCH, len(self)), device=self.device)
                sims, ids = self.search(self.feats[own].float(), k + 1)
                ids, sims = drop_own(ids.to(self.device), sims.to(self.device), own, k)
                all_ids.append(ids)
                all_sims.append(sims)
            self._static[k] = (torch.cat(all_ids), torch.cat(all_sims))
        return self._static[k]

    def static_lookup(self, index: Tensor, k: int) -> tuple[Tensor, Tensor]:
        ids, sims = self.static_neighbours(k)
        index = index.to(self.device)
        return ids[index], sims[index]
