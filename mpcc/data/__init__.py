"""From COCO-format annotations and images to MPCC train and eval datasets (see `build`)."""
