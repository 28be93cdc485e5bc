FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY bridge ./bridge
COPY workers ./workers
RUN pip install . && useradd --create-home bridge
USER bridge

ENV PORT=8000
EXPOSE 8000
# The same processes as the Procfile; compose picks one per service.
CMD ["sh", "-c", "exec gunicorn -c python:bridge.gunicorn_conf --bind 0.0.0.0:$PORT --workers ${WEB_CONCURRENCY:-2} 'bridge.app:create_app()'"]
