FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY core core
COPY worker worker
COPY web web
COPY cli cli
COPY migrations migrations
# EXTRAS="[gpu]" builds the GPU workers' image (TensorFlow with CUDA): docker-compose.yml.
ARG EXTRAS=""
RUN pip install --no-cache-dir ".${EXTRAS}"
ENV LOOKALIKE_MEDIA_DIR=/data/media
# The same console command the README documents; docker-compose.yml picks the subcommand.
ENTRYPOINT []
CMD ["lookalike", "--help"]
