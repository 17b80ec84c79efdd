"""YolactEdge: YOLACT with keyframe features carried to later frames by a flow network."""
