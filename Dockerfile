# gatewayd in a container: the dashboard built with Node, a wheel built with it inside, and a
# slim runtime that runs as an unprivileged user with its state in one volume.
#
#   docker build -t gatewayd .
#   docker run -p 127.0.0.1:3000:3000 -v gatewayd-data:/var/lib/gatewayd gatewayd
#
# Without GATEWAYD_DATABASE_URL (or DB_URL) the daemon runs its embedded PostgreSQL inside the
# volume; compose.yaml runs a PostgreSQL server beside it instead.

# --- 1: the dashboard (dashboard/ → gatewayd/static/)
FROM node:20-bookworm-slim AS dashboard
WORKDIR /src/dashboard
COPY dashboard/package.json dashboard/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY dashboard/ ./
RUN npm run build

# --- 2: the wheel, with the built dashboard inside
FROM python:3.11-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gatewayd/ gatewayd/
COPY sql/ sql/
COPY --from=dashboard /src/gatewayd/static/ gatewayd/static/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- 3: the runtime
FROM python:3.11-slim-bookworm
# libmagic: neonize's media type detection (python-magic).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libmagic1 \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --home-dir /var/lib/gatewayd --shell /usr/sbin/nologin gatewayd \
    && install -d -o gatewayd -g gatewayd -m 0700 /var/lib/gatewayd \
    && install -d -m 0755 /etc/gatewayd
COPY --from=wheel /wheels/ /tmp/wheels/
RUN pip install --no-cache-dir /tmp/wheels/*.whl && rm -rf /tmp/wheels
COPY gatewayd.toml /etc/gatewayd/gatewayd.toml

# In a container the port is published by the engine: listen on every interface of the
# container's own network namespace. Everything else comes from gatewayd.toml and the
# environment (GATEWAYD_<SECTION>_<KEY>, JWT_SECRET, DB_URL, …).
ENV GATEWAYD_SERVER_HOST=0.0.0.0 \
    GATEWAYD_LOG_FORMAT=json \
    NEONIZE_BOT_TAG=off \
    PYTHONUNBUFFERED=1

USER gatewayd
WORKDIR /var/lib/gatewayd
VOLUME ["/var/lib/gatewayd"]
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:3000/health', timeout=4).status != 200)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["gatewayd"]
CMD ["run", "--config", "/etc/gatewayd/gatewayd.toml"]
