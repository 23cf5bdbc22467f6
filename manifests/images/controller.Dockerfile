# The controller for the control plane (`migrate`, then `serve`): one static binary.
# It has no ssh client: run `apply` against ssh:// engines from a machine with
# OpenSSH (docs/install.md).
FROM scratch
COPY controller /controller
COPY tmp /tmp
ENV TMPDIR=/tmp
EXPOSE 8080
ENTRYPOINT ["/controller"]
CMD ["serve", "--listen", "0.0.0.0:8080"]
