# syntax=docker/dockerfile:1
# lossd image. Default: the CUDA build of torch (PyPI's Linux wheel bundles the CUDA
# libraries; the NVIDIA container runtime supplies the driver). CPU-only image:
#   docker build --build-arg TORCH_VARIANT=cpu -t lossd:cpu .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VARIANT=cuda
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# The runtime venv gets no pip or setuptools: the base image's pip installs into it.
RUN python -m venv --without-pip /opt/lossd
COPY constraints.txt deploy/constraints-image.txt ./
# torch first, in its own layer: it is most of the image and changes least.
RUN if [ "$TORCH_VARIANT" = "cpu" ]; then \
        pip --python /opt/lossd/bin/python install --no-deps --index-url "$TORCH_CPU_INDEX" torch==2.13.0; \
    elif [ "$TORCH_VARIANT" = "cuda" ]; then \
        pip --python /opt/lossd/bin/python install --constraint constraints.txt \
            --constraint constraints-image.txt torch==2.13.0; \
    else \
        echo "TORCH_VARIANT must be cuda or cpu" >&2; exit 1; \
    fi
COPY pyproject.toml README.md ./
COPY service ./service
# Every other dependency at the version the constraints pin (torch's own included).
RUN pip --python /opt/lossd/bin/python install --constraint constraints.txt --constraint constraints-image.txt . \
    && find /opt/lossd -name __pycache__ -prune -exec rm -rf {} +

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 lossd \
    && useradd --system --uid 10001 --gid lossd --no-create-home --shell /usr/sbin/nologin lossd
COPY --from=build /opt/lossd /opt/lossd
ENV PATH=/opt/lossd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    LOSSD_HOST=0.0.0.0 \
    LOSSD_PORT=8000 \
    LOSSD_DEVICE=auto \
    LOSSD_SHUTDOWN_GRACE_S=30
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
# 200 only once warmed up and not draining; the start period covers the warm-up.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('LOSSD_PORT', '8000'), timeout=4)"]
# SIGTERM drains: new calls get 503, calls in flight finish within LOSSD_SHUTDOWN_GRACE_S, exit 0.
STOPSIGNAL SIGTERM
CMD ["lossd", "serve"]
