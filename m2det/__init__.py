"""M2Det model: backbones (VGG16Reduced, ResNet), the MLFPN neck (FFMv1, FFMv2, TUM, SFAM),
the Detector cell and `builder` (config -> Detector / SSDPriors). The multibox head, priors
and box coding live in `heads`."""
