# An image with pgq installed, for compose.yaml's `migrate` and `worker` services.
#
# It holds pgq only. A worker also needs your tasks: copy your project in and
# install it below (see the marked lines), or build FROM this image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src

# Only what the build needs: the wheel holds src/pgq plus migrations/, so
# `pgq migrate` works from the installed package.
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
COPY migrations ./migrations
RUN pip install .

# Your application. `pgq work myproject.tasks:app` imports it from the
# installed packages or from the working directory (/home/pgq below), so
# either install it:
#   COPY path/to/your/project /app
#   RUN pip install /app
# or copy its package next to where the worker runs:
#   COPY path/to/myproject /home/pgq/myproject

# Do not run jobs as root.
RUN useradd --create-home --uid 10001 pgq
USER pgq
WORKDIR /home/pgq

# psycopg[binary] bundles libpq, so the slim image needs no system packages.
ENTRYPOINT ["pgq"]
CMD ["--help"]
