"""Small additions over ``torchvision.ops``: box coding, matching, sampling, anchors, masks."""
