# syntax=docker/dockerfile:1.7
# One small image for both programs (see docker/entrypoint.sh):
#   docker run IMAGE operator --all-namespaces
#   docker run IMAGE sidecar --config /etc/amfs/config/amfs.yaml
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: install the project and its dependencies into a virtualenv --------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/amfs
COPY pyproject.toml README.md ./
COPY sidecar/ sidecar/
COPY operator/ operator/
# A regular (non-editable) install: the final image needs no sources, and pip, setuptools
# and wheel leave the virtualenv so nothing in it can build or fetch packages.
RUN /opt/amfs/bin/pip install . \
    && /opt/amfs/bin/python -m pip uninstall --yes pip setuptools wheel \
    && find /opt/amfs -name '__pycache__' -type d -prune -exec rm -rf {} +

# ---- run: the slim base, the virtualenv, a non-root user ----------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="amfs" \
      org.opencontainers.image.description="AMFS agent memory on S3: amfs-operator and amfs-sidecar" \
      org.opencontainers.image.source="https://github.com/amfs-k8s/amfs-k8s" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/amfs/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The base image's own pip and setuptools go too: the running image installs nothing.
RUN python -m pip uninstall --yes pip setuptools wheel \
    && groupadd --system --gid 10001 amfs \
    && useradd --system --uid 10001 --gid amfs --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin amfs
COPY --from=build /opt/amfs /opt/amfs
COPY --chmod=0755 docker/entrypoint.sh /app/entrypoint.sh
# Numeric, so Kubernetes can check runAsNonRoot without resolving the name. The
# injector adds group 10001 to agent pods: the sidecar's socket is 0660 for it.
USER 10001:10001
WORKDIR /app
# 9464 sidecar metrics and probes; 9465 operator metrics; 8080 operator liveness;
# 9443 injection webhook.
EXPOSE 9464 9465 8080 9443
ENTRYPOINT ["/app/entrypoint.sh"]
CMD ["--help"]
