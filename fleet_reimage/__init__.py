"""fleet-reimage: bulk, resumable, rolling reimage of Azure Batch compute nodes."""

__version__ = "0.1.0"
