# PostgreSQL 15 from Debian, for the compose stack where no registry is reachable. It reads
# the public image's settings (POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB) and keeps its
# data in the same place, /var/lib/postgresql/data, so the compose file works with either.
FROM routines-postgres-base:bookworm
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data
EXPOSE 5432
ENTRYPOINT ["/bin/sh", "/usr/local/bin/postgres-entrypoint.sh"]
