# streamfn in a container: the daemon as a non-root user, its state on a volume, /healthz probed.
#
#   docker build -t streamfn .
#   docker run -v streamfn-state:/var/lib/streamfn streamfn produce /etc/streamfn/quickstart.toml --count 100000
#   docker run -v streamfn-state:/var/lib/streamfn -p 9464:9464 streamfn        # runs the quickstart
#
# Your own pipelines: mount their files (config + handler module side by side) and name them:
#   docker run -v ./pipelines:/etc/streamfn:ro -v streamfn-state:/var/lib/streamfn streamfn \
#       run /etc/streamfn/orders.toml --metrics-host 0.0.0.0 --metrics-port 9464
# BASE: any Debian-based image with python3 >= 3.11 and its venv module.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
COPY . /src
RUN python3 -m venv /opt/streamfn \
    && /opt/streamfn/bin/pip install --no-cache-dir --disable-pip-version-check "/src[aws,kafka,metrics]"

FROM ${BASE}
COPY --from=build /opt/streamfn /opt/streamfn
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/streamfn --create-home --shell /usr/sbin/nologin streamfn
COPY configs/quickstart.toml configs/quickstart_handler.py /etc/streamfn/
ENV PATH=/opt/streamfn/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    STREAMFN_STATE_DIR=/var/lib/streamfn/state \
    STREAMFN_OUT_DIR=/var/lib/streamfn/out
# Checkpoints, the local log and local-sink output live here: keep it across container restarts.
VOLUME /var/lib/streamfn
WORKDIR /var/lib/streamfn
USER streamfn
EXPOSE 9464
# The daemon finishes its in-flight batches and writes final checkpoints on SIGTERM: give it
# the pipeline's shutdown_timeout (docker stop -t / terminationGracePeriodSeconds) before SIGKILL.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4)"]
ENTRYPOINT ["streamfn"]
CMD ["run", "/etc/streamfn/quickstart.toml", "--metrics-host", "0.0.0.0", "--metrics-port", "9464"]
