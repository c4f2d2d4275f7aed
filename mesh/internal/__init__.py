"""The mesh's internal contracts (service-to-service API and Redis payloads),
generated from protos/mesh/internal/ by `make proto`; not part of the SDK."""
