# kdcompress as a batch job: `docker run ... kdcompress:gpu distill --teacher /data/t.pt --data ... --out /runs/x`
#
#   GPU (default): CUDA runtime + cuDNN base, onnxruntime-gpu INSTEAD of onnxruntime (both write the same
#                  `onnxruntime` package, so they are never installed together).
#       docker build -t kdcompress:gpu .
#   CPU:           plain Ubuntu base, CPU-only torch wheels (PyTorch's CPU index; when that index cannot be
#                  reached the build falls back to the ordinary package index, whose torch is the CUDA build).
#       docker build --build-arg VARIANT=cpu -t kdcompress:cpu .
#
# Restricted networks (see docs/docker.md and docker/smoke.sh, which does all of this):
#   --build-arg CPU_IMAGE=... / CUDA_IMAGE=...   a local base image instead of a registry pull;
#   --secret id=pip_ca,src=/path/to/ca.pem       a CA bundle for pip (a build secret: in no layer);
#   --build-context wheels=/dir/of/wheels        optional local wheels, bind-mounted for pip (in no layer).
#
# Two stages: `build` has pip and makes a virtual environment in /opt/venv; the final stage copies only
# that environment onto a fresh base with the Python interpreter (no pip, compilers or caches) and runs
# as an unprivileged user. Inputs are read from /data, results written to /runs. See docs/docker.md.

ARG VARIANT=gpu
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
ARG CPU_IMAGE=ubuntu:24.04

FROM ${CUDA_IMAGE} AS base-gpu
FROM ${CPU_IMAGE} AS base-cpu

# Optional local wheels: empty unless the build is given `--build-context wheels=DIR`. Only ever
# bind-mounted into a RUN step, never copied, so nothing of it stays in the image.
FROM scratch AS wheels

# ------------------------------------------------------------------------------------------------ build
# hadolint ignore=DL3006
FROM base-${VARIANT} AS build
ARG VARIANT
# CPU variant: torch/torchvision from PyTorch's CPU wheel index (about 1 GB instead of 5 GB of CUDA wheels).
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DEFAULT_TIMEOUT=60
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The base image's own python3 packages: their versions follow the base image, pinning them would break
# rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# The requirements come from pyproject.toml alone, so the (slow) dependency layer is rebuilt only when
# pyproject.toml changes, not on every source edit. For the gpu variant the `gpu` extra (onnxruntime-gpu)
# replaces onnxruntime.
WORKDIR /src
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; gpu = '${VARIANT}' == 'gpu'; \
deps = [d for d in p['dependencies'] if not (gpu and d.replace(' ', '').startswith('onnxruntime=='))]; \
deps += p['optional-dependencies']['gpu'] if gpu else []; \
open('/tmp/requirements.txt', 'w').write(chr(10).join(deps) + chr(10))" \
    && cat /tmp/requirements.txt

# pip's CA bundle comes in as the build secret `pip_ca` (a tmpfs file under /run/secrets, in no layer),
# local wheels as the optional bind mount /wheels. CPU variant: torch/torchvision from TORCH_CPU_INDEX
# first; when that index is unreachable they come from the ordinary index with everything else.
# hadolint ignore=SC2086
RUN --mount=type=secret,id=pip_ca \
    --mount=type=bind,from=wheels,target=/wheels \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
    && links="" \
    && for d in /wheels /wheels/*/; do \
           if ls "${d%/}"/*.whl > /dev/null 2>&1; then links="$links --find-links ${d%/}"; fi; \
       done \
    && echo "local wheel directories:${links:- none}" \
    && if [ "${VARIANT}" = "cpu" ]; then \
        grep -E '^(torch|torchvision)==' /tmp/requirements.txt > /tmp/torch.txt; \
        if pip install --retries 1 --timeout 30 --index-url "${TORCH_CPU_INDEX}" -r /tmp/torch.txt; then \
            echo "torch: CPU build from ${TORCH_CPU_INDEX}"; \
        else \
            echo "torch: ${TORCH_CPU_INDEX} unreachable, falling back to the ordinary package index (CUDA build)"; \
        fi; \
    fi \
    && pip install $links -r /tmp/requirements.txt \
    && python -c "import torch, onnxruntime; print('torch', torch.__version__, '| onnxruntime', onnxruntime.__version__)"

# kdcompress itself (the whole package folder and the presets), without dependencies so pip never pulls
# the CPU onnxruntime back into the gpu variant, and without build isolation (setuptools is already in the
# environment, so this step needs no network); then pip leaves the environment.
COPY kdcompress ./kdcompress
COPY presets ./presets
RUN pip install --no-deps --no-build-isolation . \
    && pip uninstall -y pip \
    && rm -rf /src/build

# ------------------------------------------------------------------------------------------------ final
# hadolint ignore=DL3006
FROM base-${VARIANT} AS final
ARG VARIANT
ENV DEBIAN_FRONTEND=noninteractive

# The interpreter only (the venv's python links to /usr/bin/python3 of this same base image); libgomp1
# for the OpenMP runtime of faiss and torch.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin kd \
    && mkdir -p /data /runs \
    && chown kd:kd /data /runs

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    KDCOMPRESS_CACHE=/runs/.kdcompress-cache \
    KDCOMPRESS_IMAGE_VARIANT=${VARIANT}

VOLUME ["/data", "/runs"]
WORKDIR /runs
USER 10001:10001
ENTRYPOINT ["kdcompress"]
CMD ["--help"]

# Labels last. KDCOMPRESS_VERSION must equal the version in pyproject.toml (tests/test_docker.py checks
# it); docker/smoke.sh passes it and SOURCE_URL (the git remote) as build arguments. No revision label:
# podman 4.3 reuses a cached LABEL step when only the build argument in it changed (the label goes stale),
# and `--label` on the command line changes every step's cache key (every commit a full rebuild).
ARG KDCOMPRESS_VERSION=0.1.0
ARG SOURCE_URL=unknown
LABEL org.opencontainers.image.title="kdcompress" \
      org.opencontainers.image.description="Distil an image classifier into a small ONNX student that meets a latency budget (${VARIANT} image)" \
      org.opencontainers.image.version="${KDCOMPRESS_VERSION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0"
