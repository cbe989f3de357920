# One image for the reducer, combiners and clients: `fedn reducer|combiner|client start`.
FROM python:3.11.10-slim-bookworm

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/fedn

# torch first, from the CPU index: an unpinned torch pulls a multi-GB CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md ./
COPY proto ./proto
COPY fedn ./fedn
COPY reducer ./reducer
COPY combiner ./combiner
COPY client ./client
COPY examples ./examples
RUN pip install '.[torch,examples]'

RUN useradd --create-home --uid 10001 fedn
USER fedn
EXPOSE 8092 12080
ENTRYPOINT ["fedn"]
CMD ["--help"]
