"""Offline evaluation: replay a bag through the restoration pipeline with
several backends side by side and measure what SLAM cares about.

Modules: :mod:`.metrics` (PSNR/SSIM, sharpness, cross-view consistency,
feature matching), :mod:`.alignment` (Sim3/Umeyama), :mod:`.mapping`
(pycolmap SfM), :mod:`.replay` (bag -> pipeline -> records + restored bag),
:mod:`.report` (report.json/.md, crops, plots), :mod:`.cli` (``sirdiff-eval``).
Submodules are imported on demand so that ``import sirdiff_ros.evaluation``
stays cheap.
"""
