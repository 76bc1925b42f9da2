"""lossd: a loss-computation microservice."""

__version__ = "0.1.0"
