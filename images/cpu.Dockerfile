# syntax=docker/dockerfile:1
# rglcd CPU image (configure, the canary rollout, the scheduled `rglcd pipeline submit`):
# Python 3.11 slim with clients only - kfp, kubernetes, boto3, DVC's S3 remote, mlflow-skinny - from
# images/cpu.lock (hashes). No torch and no model libraries: these steps never load a model. Build from the
# repository root:  make images
# Base pinned by digest (tag kept for readers); refresh both together.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY images/cpu.lock images/
RUN pip install --require-hashes --no-deps -r images/cpu.lock
COPY pyproject.toml README.md ./
COPY rglcd rglcd
COPY components components
COPY pipelines pipelines
RUN pip install --no-deps . && rglcd --help >/dev/null

FROM ${PYTHON_IMAGE} AS runtime
RUN useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin rglcd \
    && mkdir -p /cache /checkpoints \
    && chown 1000:1000 /cache /checkpoints
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    XDG_CACHE_HOME=/tmp/.cache
USER 1000:1000
WORKDIR /home/rglcd
CMD ["rglcd", "--help"]
