# PostgreSQL 15 from this machine's Debian packages, in a FROM scratch image:
# binaries, the libraries they load, their data files and a shell for the
# entrypoint (build-images.sh gathers them into the build context).
FROM scratch
COPY rootfs/ /
# COPY makes files root's: the data and socket directories are the database's.
COPY --chown=999:999 rootfs/var/lib/postgresql /var/lib/postgresql
COPY --chown=999:999 rootfs/var/run /var/run
ENV PATH=/usr/lib/postgresql/15/bin:/bin PGDATA=/var/lib/postgresql/data LANG=C.UTF-8
USER 999:999
EXPOSE 5432
ENTRYPOINT ["/bin/sh", "/usr/local/bin/postgres-entrypoint.sh"]
