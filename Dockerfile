# An image with pgq installed and the demo shop, for compose.yaml's services.
#
# To run your own app instead of the demo, copy your project in and install it
# below (see the marked lines), or build FROM this image; then set PGQ_APP.
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
# installed packages or from the working directory (/home/pgq), so either
# install it:
#   COPY path/to/your/project /app
#   RUN pip install /app
# or copy its package next to where the worker runs, as the demo's is below:
#   COPY path/to/myproject /home/pgq/myproject

# Do not run jobs as root.
RUN useradd --create-home --uid 10001 pgq
USER pgq
WORKDIR /home/pgq

# The demo (examples/compose_demo): `pgq work shop.tasks:app` and
# `python -m shop.orders` import it from this working directory.
COPY examples/compose_demo/shop ./shop

# psycopg[binary] bundles libpq, so the slim image needs no system packages.
ENTRYPOINT ["pgq"]
CMD ["--help"]
