"""File access shared by every stage: local paths and remote URIs (gs://) alike."""
