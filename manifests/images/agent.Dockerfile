# The agent: one static binary, nothing else. `controller apply` runs it on each host
# (hosts[].agent) with the engine's socket and the tenants' data read-only.
FROM scratch
COPY agent /agent
ENTRYPOINT ["/agent"]
