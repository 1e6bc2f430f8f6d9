# Reverie images, two targets (scripts/docker_check.sh builds, lints and runs both):
#
#   serve  torch-free: `reverie serve` on a bundle, an export folder or a run dir mounted at /models
#            docker build --target serve -t reverie:serve .
#            docker run --rm -p 127.0.0.1:8000:8000 -p 127.0.0.1:50051:50051 -v "$PWD/runs/default:/models:ro" reverie:serve
#   up     (the default, last stage) trainer plus server, its run dir in the /data volume; rerun to resume
#            docker build -t reverie:latest .
#            docker run --rm -p 127.0.0.1:8000:8000 -p 127.0.0.1:50051:50051 -v reverie-data:/data reverie:latest
#
# Inputs beyond the source:
# - reverie-base:bookworm, a local image: Debian bookworm minbase made with debootstrap and `docker
#   import`ed (the script makes it). bookworm's python3 is 3.11, which the torch wheel is built for.
# - .docker-wheels/torch-2.13.0+cpu-*.whl (the `up` target only): torch is this CPU wheel, pinned by a
#   constraint so that no install ever pulls a CUDA build from PyPI.
# - .docker-wheels/*.crt (optional): a CA bundle for pip, where HTTPS goes through an intercepting
#   proxy. It is used in the dependency stages only and never reaches the final images.
#
# Dependencies are installed from pyproject.toml alone, in stages whose venv the final stages copy, so a
# source edit only redoes the small no-deps editable install, whose build step (build_proto.py, with
# grpcio-tools from the build requirements) generates the gRPC code from proto/ into /app/reverie/v1.

FROM reverie-base:bookworm AS base
# No python3-pip: the venv's own pip (ensurepip, from python3-venv) does all the installing.
# Versions of Debian packages are not pinned (DL3008): the base is a fresh bookworm snapshot and
# apt takes bookworm's current (security-patched) python3.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin reverie
# PATH is spelled out: the imported base image has only the default one.
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# The dependencies of the project and its serve extra, plus its build requirements (the editable
# installs below run without build isolation, hence offline). /tmp/build/{serve,train}.txt are the
# requirement lists read from pyproject.toml, the self-references `reverie[...]` left out (train's
# `reverie[games]`, the pixel and Atari envs, spelled out instead).
FROM base AS serve-deps
COPY pyproject.toml .docker-wheels/*.crt /tmp/build/
RUN python -c "import tomllib; t = tomllib.load(open('/tmp/build/pyproject.toml', 'rb')); p = t['project']; x = p['optional-dependencies']; [open(f'/tmp/build/{e}.txt', 'w').write('\n'.join(t['build-system']['requires'] + p['dependencies'] + [r for k in ('client', 'serve', *(('games',) if e == 'train' else ()), e) for r in x[k] if not r.startswith('reverie')]) + '\n') for e in ('serve', 'train')]" \
    && if [ -f /tmp/build/ca-certificates.crt ]; then export PIP_CERT=/tmp/build/ca-certificates.crt; fi \
    && pip install --no-cache-dir -r /tmp/build/serve.txt

# The source is spelled out: `COPY . /app` would also copy .docker-wheels/.
FROM base AS source
COPY pyproject.toml README.md build_proto.py /app/
COPY proto /app/proto
COPY reverie /app/reverie
COPY trainer /app/trainer
COPY service /app/service
COPY clients /app/clients
COPY cli /app/cli

FROM base AS serve
COPY --from=serve-deps /opt/venv /opt/venv
COPY --from=source /app /app
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e . \
    && python -c "import reverie.wire" \
    && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"
USER 10001:10001
EXPOSE 8000 50051
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["reverie", "serve", "--models", "/models", "--host", "0.0.0.0"]

# (after `serve`: the legacy builder builds every stage above its --target)
FROM serve-deps AS train-deps
COPY .docker-wheels/torch-2.13.0+cpu-*.whl /tmp/wheels/
RUN echo "torch==2.13.0+cpu" > /tmp/build/constraints.txt \
    && if [ -f /tmp/build/ca-certificates.crt ]; then export PIP_CERT=/tmp/build/ca-certificates.crt; fi \
    && pip install --no-cache-dir --find-links /tmp/wheels -c /tmp/build/constraints.txt -r /tmp/build/train.txt \
    && python -c "import torch; assert torch.__version__ == '2.13.0+cpu' and torch.version.cuda is None, torch.__version__"

FROM base AS up
COPY --from=train-deps /opt/venv /opt/venv
COPY --from=source /app /app
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e . \
    && python -c "import reverie.wire, torch, reverie.trainer.loop" \
    && mkdir -p /data/run \
    && chown -R 10001:10001 /data
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000 50051
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["reverie", "up", "--host", "0.0.0.0", "--run-dir", "/data/run"]
