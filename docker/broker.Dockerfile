# The broker, CPU only:  docker build -f docker/broker.Dockerfile -t compute-broker .
# docs/containers.md says how to run it.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY broker ./broker
COPY common ./common
COPY worker ./worker
# The Makefile's install steps (venv, pip upgrade, the project), without the dev extra.
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/python -m pip install --no-cache-dir --upgrade pip \
 && /opt/venv/bin/python -m pip install --no-cache-dir .

FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/broker --create-home broker \
 && install -d -m 0700 -o broker -g broker /var/lib/broker/data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    BROKER_DATA_DIR=/var/lib/broker/data \
    BROKER_LISTEN=0.0.0.0:50051 \
    BROKER_METRICS_LISTEN=0.0.0.0:9464 \
    BROKER_LOG_FORMAT=json
VOLUME /var/lib/broker/data
USER broker
EXPOSE 50051 9464
ENTRYPOINT ["broker"]
CMD ["serve"]
