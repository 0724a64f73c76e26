"""Our meta-architecture, anchor generator, head and classification losses, registered into Detectron2."""
