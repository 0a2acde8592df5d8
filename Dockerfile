# The glmops operator image.
#
#   docker build -t ghcr.io/glmops/operator:0.1.0 .
#
# Two stages: the first builds the project's wheel and installs it with the `operator` extra
# (kopf, the Kubernetes client) into a venv; the final stage is the slim Python runtime and that
# venv alone: no compiler, no pip, no source tree, no ML stack (the operator never imports torch).
# It runs as a non-root user and writes nothing outside /tmp, so the chart's read-only root
# filesystem with an emptyDir at /tmp is all it needs. tests/chart/test_images.py checks this file.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps the rest of the checkout out).
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY trainer_image ./trainer_image
COPY devcluster ./devcluster
RUN python -m pip install --no-cache-dir --disable-pip-version-check "setuptools>=77" wheel \
 && python -m pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels . \
 && python -m venv --without-pip /opt/venv \
 && python -m pip --python /opt/venv/bin/python install --no-cache-dir --disable-pip-version-check --compile \
        "$(ls /wheels/glmops-*.whl)[operator]"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="glmops-operator" \
      org.opencontainers.image.description="Kubernetes operator that fine-tunes, exports and serves GLM-4.7 and GLM-4.7-Flash" \
      org.opencontainers.image.licenses="Apache-2.0"
# pip and setuptools of the base image go too: nothing installs anything at run time.
RUN python -m pip uninstall --yes pip setuptools wheel >/dev/null 2>&1 || true
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# The chart runs it as 65532 as well (pod securityContext); the image says so too.
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "glmops.cli.main"]
CMD ["run"]
