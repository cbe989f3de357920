# One image for the reducer, combiners and clients: `fedn reducer|combiner|client start`.
# The base image is pinned by digest (a tag can be moved to other content); every Python package by
# version and sha256 (requirements/docker.lock, made by `make lock`). Move the digest to a newer
# build of the same tag with: docker buildx imagetools inspect python:3.11.10-slim-bookworm
FROM python:3.11.10-slim-bookworm@sha256:5148c0e4bbb64271bca1d3322360ebf4bfb7564507ae32dd639322e4952a6b16

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/fedn

# Everything fedn needs, the server extra and the example clients' scikit-learn and CPU torch
# (torch==2.13.0+cpu, from the PyTorch CPU index: an unpinned torch pulls a multi-GB CUDA build).
# pip refuses any file whose hash is not in the lock, and any package the lock does not name.
COPY requirements/docker.lock ./requirements/docker.lock
RUN pip install --require-hashes --no-deps --extra-index-url https://download.pytorch.org/whl/cpu \
        -r requirements/docker.lock

# fedn itself, built from this source with the locked setuptools and wheel: no further download.
COPY pyproject.toml README.md ./
COPY fedn ./fedn
COPY reducer ./reducer
COPY combiner ./combiner
COPY client ./client
RUN pip install --no-deps --no-build-isolation --no-index . && pip check

# The example clients run from the working directory (`--client examples.digits:DigitsClient`);
# they are not part of the fedn wheel.
COPY examples ./examples

RUN useradd --create-home --uid 10001 fedn
USER fedn
EXPOSE 8092 12080
ENTRYPOINT ["fedn"]
CMD ["--help"]
