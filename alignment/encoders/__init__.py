"""Encoders from features to voxels; the shared CV loop lives in alignment.evaluation."""
