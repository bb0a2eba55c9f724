# iotbridge container image: `docker build -t iotbridge:0.1.0 .`
# Both stages use the same base, so the venv built in the first runs unchanged in the second.
# The base is pinned by digest, not only by tag: a tag is rebuilt in place when Debian ships
# fixes, a digest names one image. It is python:3.11.13-slim-bookworm's multi-platform index;
# to move it (a newer build of the tag, or a newer patch release), take the digest that
#   docker buildx imagetools inspect python:3.11.13-slim-bookworm
# prints and change both FROM lines together. scripts/lock checks it where a registry is reachable.

FROM python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1 AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Dependencies come from the lock files alone (scripts/lock writes them from pyproject.toml):
# every file pip fetches is checked against its hash and nothing is resolved here. Wheels only:
# building an sdist would fetch its build backend unchecked (and need a compiler).
COPY requirements.lock requirements-build.lock ./
RUN python -m venv /opt/build \
 && /opt/build/bin/pip install --require-hashes --only-binary :all: --no-deps -r requirements-build.lock \
 && python -m venv /opt/iotbridge \
 && /opt/iotbridge/bin/pip install --require-hashes --only-binary :all: --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY bridge ./bridge
# The wheel is built with the locked setuptools (no build isolation, which would fetch a build
# backend unchecked) and installed without dependencies; pip check proves the lock was all of
# them. Then the venv loses its installers: nothing in it may fetch code at run time.
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && /opt/iotbridge/bin/pip install --no-deps /wheels/*.whl \
 && /opt/iotbridge/bin/pip check \
 && /opt/iotbridge/bin/python -m pip uninstall -y pip setuptools wheel

FROM python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1
# The base image's own installers go as well, with ensurepip's bundled copies, so that no pip is
# left in the image to install anything.
RUN python -m pip uninstall -y pip setuptools wheel \
 && rm -rf /usr/local/lib/python3.11/ensurepip/_bundled \
 && groupadd --system --gid 10001 iotbridge \
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
