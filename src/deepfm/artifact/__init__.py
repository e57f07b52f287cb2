"""The model artifact: ``model.pt`` saved, loaded and migrated, and the loaded :class:`TrainedModel`."""
