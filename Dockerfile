# syntax=docker/dockerfile:1
# Pensu service image: `docker build -t pensu .` then `docker run pensu` (command `run`).
# Two stages: the build stage installs the package into a venv, the runtime stage copies that
# venv (no compilers, no pip cache) and compiles the numba kernels once, at build time.

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/pensu
WORKDIR /src
# Only what `pip install .` needs: the project metadata (readme included) and the package.
COPY pyproject.toml README.md ./
COPY pensu ./pensu
RUN /opt/pensu/bin/pip install --upgrade pip \
 && /opt/pensu/bin/pip install .

FROM python:3.11-slim-bookworm AS runtime
# numba caches machine code per CPU model; "generic" keeps the cache built here valid on any
# x86-64 host. Build with --build-arg NUMBA_CPU_NAME=<llvm cpu, e.g. skylake> when the image
# only runs on known hardware and you want the host-specific vector instructions.
ARG NUMBA_CPU_NAME=generic
ARG PENSU_UID=10001
RUN groupadd --system --gid "${PENSU_UID}" pensu \
 && useradd --system --uid "${PENSU_UID}" --gid pensu --home-dir /var/lib/pensu \
        --shell /usr/sbin/nologin pensu \
 && install -d -o pensu -g pensu -m 0750 /var/lib/pensu /var/lib/pensu/models \
 && install -d -o pensu -g pensu -m 0755 /var/cache/pensu /var/cache/pensu/numba
COPY --from=build /opt/pensu /opt/pensu
ENV PATH=/opt/pensu/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/var/cache/pensu/numba \
    NUMBA_CPU_NAME=${NUMBA_CPU_NAME} \
    PENSU_MODELS_DIR=/var/lib/pensu/models \
    PENSU_PING_LISTEN_HOST=0.0.0.0 \
    PENSU_HTTP_HOST=0.0.0.0
USER pensu
WORKDIR /var/lib/pensu

# Warm the numba cache as the runtime user, so the files belong to it and the first samples a
# container sees are not delayed by JIT compilation. A configured value range skips the
# model's value warm-up, so the spatial pooler, temporal memory, likelihood and predictor
# kernels all run; a serialisation round trip covers the restore path, and the log checkpoint
# store's checksum is compiled too. Kernels reached only
# by rare branches still compile lazily into the same (writable) cache at run time.
RUN python - <<'EOF'
import math

from pensu.htm.model import HtmModel
from pensu.htm.presets import prediction_params, preset_params

anomaly = HtmModel.from_preset("nab", seed=1, min_value=0.0, max_value=100.0)
forecast = HtmModel(prediction_params(preset_params("nab", min_value=0.0, max_value=100.0), 1), seed=1)
ts = 1_700_000_000
for i in range(300):
    ts = 1_700_000_000 + 300 * i
    value = 50.0 + 40.0 * math.sin(i / 5.0)
    anomaly.step(ts, value)
    forecast.step(ts, value)
HtmModel.from_bytes(anomaly.to_bytes()).step(ts + 300, 50.0)
HtmModel.from_bytes(forecast.to_bytes()).step(ts + 300, 50.0)
from pensu.checksum import xxh64  # the log checkpoint store's record checksum

xxh64(anomaly.to_bytes())
print("numba cache warmed")
EOF

VOLUME ["/var/lib/pensu/models"]
# 9999: TCP ping (health), 8000: HTTP /healthz, /readyz, /metrics.
EXPOSE 9999 8000
# Send "ping", expect "pong"; honours a PENSU_PING_LISTEN_PORT override.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os,socket; s=socket.create_connection(('127.0.0.1', int(os.environ.get('PENSU_PING_LISTEN_PORT', '9999'))), timeout=4); s.sendall(b'ping\n'); raise SystemExit(0 if s.recv(64).startswith(b'pong') else 1)"
ENTRYPOINT ["pensu"]
CMD ["run"]
