# iotbridge container image: `docker build -t iotbridge:0.1.0 .`
# Both stages use the same pinned base, so the venv built in the first runs unchanged in the second.

FROM python:3.11.13-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bridge ./bridge
# Every dependency ships a manylinux wheel for CPython 3.11, so no compiler is needed here either.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/iotbridge \
 && /opt/iotbridge/bin/pip install /wheels/*.whl

FROM python:3.11.13-slim-bookworm
RUN groupadd --system --gid 10001 iotbridge \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin iotbridge
COPY --from=builder /opt/iotbridge /opt/iotbridge
# Bytecode was compiled at install time; the root filesystem is read-only in Kubernetes.
ENV PATH=/opt/iotbridge/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    IOTBRIDGE_HTTP_ADDR=0.0.0.0:9464
EXPOSE 9464
USER 10001:10001
ENTRYPOINT ["iotbridge"]
CMD ["run"]
