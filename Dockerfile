# One image for every role of a certification cluster; `seg1b` is the entry point:
#   docker build -t seg1b-dask:0.1.0 .
#   docker run --rm -v seg1b-runs:/runs seg1b-dask:0.1.0                     # the default job (seed 42)
#   docker run --rm seg1b-dask:0.1.0 scheduler --port 8786 --dashboard-address :8787
#   docker run --rm -v seg1b-runs:/runs seg1b-dask:0.1.0 worker tcp://HOST:8786 --root /runs --nthreads 1
#   docker run --rm -v seg1b-runs:/runs seg1b-dask:0.1.0 certify --scheduler tcp://HOST:8786 --root /runs/certification
# cluster/README.md runs them together (Compose, Kubernetes, an existing cluster).

FROM python:3.11.13-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml ./
COPY seg1b_dask ./seg1b_dask
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11.13-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib
COPY cluster/requirements.lock /tmp/requirements.lock
COPY --from=wheel /wheels /tmp/wheels
# Every dependency at the version the lock pins (the package's own pins included), then the wheel.
RUN pip install --no-cache-dir --requirement /tmp/requirements.lock \
    && pip install --no-cache-dir --no-deps /tmp/wheels/seg1b_dask-*.whl \
    && rm -rf /tmp/wheels /tmp/requirements.lock \
    && useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin seg1b \
    && mkdir /runs \
    && chown seg1b:seg1b /runs
USER 10001:10001
# /runs belongs to seg1b, so a named volume mounted there starts writable by it.
WORKDIR /runs
EXPOSE 8786 8787 8788
ENTRYPOINT ["seg1b"]
CMD ["run", "--root", "/runs/demo"]
