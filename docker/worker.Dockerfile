# A worker. CPU:   docker build -f docker/worker.Dockerfile -t compute-worker .
# CUDA:  docker build -f docker/worker.Dockerfile -t compute-worker:cuda \
#          --build-arg BASE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 \
#          --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
# docs/containers.md says how to run it (with --gpus all for CUDA).
ARG BASE=python:3.11-slim

FROM ${BASE} AS python
# The CUDA images have no Python: add the distribution's (3.12 on Ubuntu 24.04).
RUN command -v python3 > /dev/null || { apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*; }

FROM python AS build
# torch first, from PyTorch's index: the CPU build, or the CUDA build of the same version.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY pyproject.toml README.md ./
COPY broker ./broker
COPY common ./common
COPY worker ./worker
# The Makefile's install steps (venv, pip upgrade, the project), with the worker extra.
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/python -m pip install --no-cache-dir --upgrade pip \
 && /opt/venv/bin/python -m pip install --no-cache-dir --index-url "$TORCH_INDEX" torch==2.13.0 \
 && /opt/venv/bin/python -m pip install --no-cache-dir '.[worker]'

FROM python
RUN useradd --system --uid 10002 --user-group --home-dir /var/lib/worker --create-home worker \
 && install -d -m 0700 -o worker -g worker /var/lib/worker/state
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    WORKER_STATE_DIR=/var/lib/worker/state \
    WORKER_API_KEY_FILE=/run/secrets/worker-api-key \
    WORKER_LISTEN=0.0.0.0:50052 \
    WORKER_METRICS_LISTEN=0.0.0.0:9465 \
    WORKER_LOG_FORMAT=json
VOLUME /var/lib/worker/state
USER worker
EXPOSE 50052 9465
ENTRYPOINT ["worker"]
CMD ["serve"]
