# syntax=docker/dockerfile:1
# rglcd training image (GPU steps, data prep, the PyTorchJob/TrainJob pods): Python 3.11 slim, torch 2.14.1 from
# PyPI, whose wheels bring their own CUDA 13 libraries (nvidia-*-cu13) - no CUDA runtime base under them; the node's
# driver comes in through the NVIDIA container toolkit. Packages from images/train.lock (hashes, no resolution at
# build time). Build from the repository root:  make images REGISTRY=ghcr.io/rglcd TAG=0.1.0
# Model caches (HF_HOME, TORCH_HOME, rglcd's model.cache_dir) live under /cache: mount the model-cache PVC there.
# Base pinned by digest (tag kept for readers); refresh both together.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY images/train.lock images/requirements-assets.txt images/
RUN pip install --require-hashes --no-deps -r images/train.lock \
    && pip install --no-deps -r images/requirements-assets.txt
COPY pyproject.toml README.md ./
COPY rglcd rglcd
COPY components components
COPY pipelines pipelines
RUN pip install --no-deps . && rglcd --help >/dev/null

FROM ${PYTHON_IMAGE} AS runtime
# uid/gid 1000 = components/podspec.py RUN_AS_USER/RUN_AS_GROUP; the pods run with a read-only root filesystem
RUN useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin rglcd \
    && mkdir -p /cache /checkpoints \
    && chown 1000:1000 /cache /checkpoints
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/cache/huggingface \
    TORCH_HOME=/cache/torch \
    XDG_CACHE_HOME=/cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    HF_HUB_DISABLE_TELEMETRY=1
USER 1000:1000
WORKDIR /home/rglcd
CMD ["rglcd", "--help"]
