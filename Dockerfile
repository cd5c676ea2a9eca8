# kdcompress as a batch job: `docker run ... kdcompress:gpu distill --teacher /data/t.pt --data ... --out /runs/x`
#
#   GPU (default): CUDA runtime + cuDNN base, onnxruntime-gpu INSTEAD of onnxruntime (both write the same
#                  `onnxruntime` package, so they are never installed together).
#       docker build -t kdcompress:gpu .
#   CPU:           plain Ubuntu base, CPU-only torch wheels, onnxruntime.
#       docker build --build-arg VARIANT=cpu -t kdcompress:cpu .
#
# Two stages: `build` has pip and makes a virtual environment in /opt/venv; the final stage copies only
# that environment onto a fresh base with the Python interpreter (no pip, compilers or caches) and runs
# as an unprivileged user. Inputs are read from /data, results written to /runs. See docs/docker.md.

ARG VARIANT=gpu
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
ARG CPU_IMAGE=ubuntu:24.04

FROM ${CUDA_IMAGE} AS base-gpu
FROM ${CPU_IMAGE} AS base-cpu

# ------------------------------------------------------------------------------------------------ build
# hadolint ignore=DL3006
FROM base-${VARIANT} AS build
ARG VARIANT
# CPU variant: torch/torchvision from PyTorch's CPU wheel index (about 1 GB instead of 5 GB of CUDA wheels).
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Ubuntu's own python3 packages: their versions follow the base image, pinning them would break rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY kdcompress ./kdcompress
COPY presets ./presets

# The pinned dependencies come from pyproject.toml; for the gpu variant the `gpu` extra (onnxruntime-gpu)
# replaces onnxruntime, and kdcompress itself is installed without dependencies so pip never pulls the
# CPU onnxruntime back in.
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; gpu = '${VARIANT}' == 'gpu'; \
deps = [d for d in p['dependencies'] if not (gpu and d.replace(' ', '').startswith('onnxruntime=='))]; \
deps += p['optional-dependencies']['gpu'] if gpu else []; \
open('/tmp/requirements.txt', 'w').write(chr(10).join(deps) + chr(10))" \
    && cat /tmp/requirements.txt

RUN if [ "${VARIANT}" = "cpu" ]; then \
        grep -E '^(torch|torchvision)==' /tmp/requirements.txt > /tmp/torch.txt \
        && pip install --no-cache-dir --index-url "${TORCH_CPU_INDEX}" -r /tmp/torch.txt; \
    fi \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && pip install --no-cache-dir --no-deps . \
    && pip uninstall -y pip \
    && find /opt/venv -name '__pycache__' -type d -prune -exec rm -rf {} +

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
