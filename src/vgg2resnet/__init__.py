"""vgg2resnet: migrate a VGG-16 classifier to a distilled ResNet-50."""
