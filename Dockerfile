FROM python:3.11-slim
WORKDIR /srv
COPY pyproject.toml README.md ./
COPY app ./app
COPY policies ./policies
COPY config ./config
RUN pip install --no-cache-dir .
USER nobody
EXPOSE 8000
CMD ["gateway", "serve", "--host", "0.0.0.0", "--port", "8000", "--config", "config/demo.yaml"]
