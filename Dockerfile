# One image for every role of a certification cluster; `seg1b` is the entry point:
#   docker build -t seg1b-dask:0.1.0 .
#   docker run --rm -v seg1b-runs:/runs seg1b-dask:0.1.0                     # the default job (seed 42)
#   docker run --rm -v ./certs:/certs:ro seg1b-dask:0.1.0 scheduler --protocol tls --port 8786 --tls-ca-file …
#   docker run --rm -v seg1b-runs:/runs -v ./certs:/certs:ro seg1b-dask:0.1.0 worker tls://HOST:8786 --root /runs …
#   docker run --rm -v seg1b-runs:/runs -v ./certs:/certs:ro -e DASK_DISTRIBUTED__COMM__TLS__… seg1b-dask:0.1.0 \
#     certify --scheduler tls://HOST:8786 --root /runs/certification
# cluster/README.md runs them together over mutual TLS (Compose, podman, Kubernetes, an existing cluster).

# The environment: every dependency at the version the lock pins (the package's own pins
# included), then the package from its wheel, in a venv the final stage copies whole. Test
# suites shipped inside dependencies and the debugging sections of their extension modules are not
# needed to run (the libraries auditwheel vendored, under *.libs, are left as they are).
FROM python:3.11.13-slim-bookworm AS environment
RUN apt-get update \
    && apt-get install -y --no-install-recommends binutils=2.40-2 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY cluster/requirements.lock ./
RUN python -m venv /opt/seg1b \
    && /opt/seg1b/bin/pip install --no-cache-dir --requirement requirements.lock
COPY pyproject.toml ./
COPY seg1b_dask ./seg1b_dask
RUN /opt/seg1b/bin/pip install --no-cache-dir --no-deps . \
    && /opt/seg1b/bin/pip uninstall --yes pip \
    && find /opt/seg1b/lib -depth -type d \( -name tests -o -name test \) -path '*/site-packages/*/*' \
        -exec rm -rf {} + \
    && find /opt/seg1b/lib -type f -name '*.so*' -not -path '*.libs/*' -exec sh -c \
        'for lib; do if readelf -S "$lib" | grep -q debug_info; then strip --strip-debug "$lib"; fi; done' sh {} +

FROM python:3.11.13-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    PATH=/opt/seg1b/bin:$PATH
COPY --from=environment /opt/seg1b /opt/seg1b
RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin seg1b \
    && mkdir /runs \
    && chown seg1b:seg1b /runs
USER 10001:10001
# /runs belongs to seg1b, so a named volume mounted there starts writable by it.
WORKDIR /runs
EXPOSE 8786 8787 8788
ENTRYPOINT ["seg1b"]
CMD ["run", "--root", "/runs/demo"]
