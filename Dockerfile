FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# The pinned dependencies first (requirements.txt less its last line, the bridge itself):
# a change to the code alone reuses this layer.
COPY requirements.txt ./
RUN sed '/^\.$/d' requirements.txt > /tmp/dependencies.txt \
    && pip install -r /tmp/dependencies.txt && rm /tmp/dependencies.txt
COPY pyproject.toml README.md ./
COPY bridge ./bridge
COPY workers ./workers
# A dependency missing from requirements.txt fails the build, not the container's start:
# pip check (pyproject.toml's), then the modules the web and the worker load.
RUN pip install --no-deps . && pip check \
    && python -c "import bridge.gunicorn_conf, bridge.cli, workers.work_loop" \
    && mkdir -p /app/config && useradd --create-home bridge
USER bridge

ENV PORT=8000
EXPOSE 8000
# The same processes as the Procfile; compose picks one per service. A products file goes
# in /app/config (docker-compose.yml mounts ./config there).
CMD ["sh", "-c", "exec gunicorn -c python:bridge.gunicorn_conf --bind 0.0.0.0:$PORT --workers ${WEB_CONCURRENCY:-2} 'bridge.app:create_app()'"]
