"""Data: reading images and masks, verification, augmentation, tf.data pipelines.

cv2, PIL and albumentations are used only inside this package.
"""
